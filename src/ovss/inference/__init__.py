"""Inference machinery shared by the methods: resizing rules, batched sliding windows, the probability /
synonym / background rule, PAMR."""
