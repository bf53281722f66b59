"""The torch-free ground every other package stands on: the network's vocabulary (``spec``), image decoding
(``images``), label files (``labels``), the command-line helpers (``cli``) and the display normalisation
(``display``). It imports nothing of the project above it."""
