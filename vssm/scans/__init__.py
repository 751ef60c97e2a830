"""Scan orders and the gathers that turn a 2-D map into 1-D sequences and back.

``orders``     which position each token of each direction reads (VMamba's cross orders, the index tables derived
               from an order set, ``register_order_table`` for orders of new families)
``hilbert``    generalised Hilbert curves of any H x W (FractalMamba)
``quadtree``   QuadMamba's learned quadtree layouts
``sequence``   gather a channels-last map into (batch, L, K, C) sequences, merge them back
"""
from .hilbert import hilbert_curve, hilbert_orders
from .orders import cross_orders, inverse_orders, locality, register_order_table
from .sequence import gather_sequences, merge_sequences

__all__ = ["cross_orders", "hilbert_curve", "hilbert_orders", "inverse_orders", "locality", "register_order_table",
           "gather_sequences", "merge_sequences"]
