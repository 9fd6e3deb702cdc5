"""Celery wiring: the app's configuration, the tasks, the due mover, the transport.

The data path (``dispatch.py``, ``vast/``, ``store/``) never imports this package:
it is handed a ``Runtime`` whose publisher is the Celery one made here.
"""
