"""The gateway: one patient's images in, one report out (cells, differential, subtype), cached."""
