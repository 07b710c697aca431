"""Adapters of the delivery component's ports (``components/delivery/ports.py``)."""
