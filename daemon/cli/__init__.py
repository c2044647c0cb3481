"""The ``ctd`` command line (``main``) and the operator tools it runs."""
