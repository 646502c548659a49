"""firmware: the model image format and the host-side driver."""
