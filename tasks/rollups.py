"""Rollup and analytics tasks (``tollgate.rollups.*``)."""
