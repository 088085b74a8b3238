"""The built-in token stores and hubs of tornado-signin.

Nothing here is imported by the core: each backend is reached through the
``tornado_signin.backends`` (or ``tornado_signin.hubs``) entry-point group.
"""
