"""From an object in the store to a folder MLServer can load: the store (``store``), unpacking (``archive``),
the disk cache (``cache``), an artifact's own settings (``declared_settings``), the isolated load check
(``isolation``, its slots in ``fair_slots``) and MLServer's model repository (``repository``)."""
