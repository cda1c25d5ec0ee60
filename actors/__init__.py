"""Actors: session actors, the scheduler actor and the session registry."""
