"""Scan orders and the gathers that turn a 2-D map into 1-D sequences and back.

``orders``   which position each token of each direction reads (cross orders of VMamba, ...)
``sequence`` gather a channels-last map into (batch, L, K, C) sequences, merge them back
"""
from .orders import cross_orders, inverse_orders, locality
from .sequence import gather_sequences, merge_sequences

__all__ = ["cross_orders", "inverse_orders", "locality", "gather_sequences", "merge_sequences"]
