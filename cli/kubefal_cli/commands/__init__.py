"""One module per verb group of the ``kubefal`` command line."""
