"""One module per question of the canon (ids as in the canon's table)."""
