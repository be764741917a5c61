"""The two roles of a split's images (a module of its own: the store needs it without the
dataset code's imports)."""

ROLES = ("database", "queries")
