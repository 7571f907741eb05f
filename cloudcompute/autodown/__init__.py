"""Clusters that end themselves: a watchdog on the first node (see README,
"Clusters that end themselves")."""
