"""pynet: a Docker remote network driver that builds what the built-in bridge driver builds."""
