"""One thin command-line module per DVC stage (`python -m pipeline.<stage>`); the library is `cart`."""
