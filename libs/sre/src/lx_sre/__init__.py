"""lxctl: rebuild and verify projections, replay ranges, handle dead letters, see lag."""
