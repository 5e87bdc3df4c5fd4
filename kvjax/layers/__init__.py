"""Building blocks shared by the kvjax models."""
