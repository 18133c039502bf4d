"""Dataset readers: BOP-format scenes, models info, dataset cards and visibility."""
