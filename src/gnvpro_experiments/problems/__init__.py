"""The experiments' data sets: each a :class:`~.base.Problem`, registered by name in
:mod:`.registry` (the TOML's ``problem = NAME``)."""
