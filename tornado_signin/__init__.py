"""tornado-signin: Google Sign-In server-side flow for Tornado."""
