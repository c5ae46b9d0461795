"""Validation of experiment configs against their defaults: unknown or missing keys fail loudly."""

import ml_collections


def _keys(config: ml_collections.ConfigDict) -> set[str]:
  return set(config.keys())


def validate(
  config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, path: str = 'config'
) -> None:
  """Raises ValueError if `config` has a key `reference` lacks (a typo) or lacks one it has.

  Args:
    config: the config a run was given (after command-line overrides).
    reference: the experiment's default config, which defines the schema.
    path: dotted prefix used in error messages.
  """
  unknown = sorted(_keys(config) - _keys(reference))
  if unknown:
    raise ValueError(
      f'unknown config keys {[f"{path}.{k}" for k in unknown]}; valid keys: {sorted(_keys(reference))}.'
    )
  missing = sorted(_keys(reference) - _keys(config))
  if missing:
    raise ValueError(f'missing config keys {[f"{path}.{k}" for k in missing]}.')
  for key in _keys(reference):
    if isinstance(reference[key], ml_collections.ConfigDict):
      if not isinstance(config[key], ml_collections.ConfigDict):
        raise ValueError(f'{path}.{key} must be a section, got {config[key]!r}.')
      validate(config[key], reference[key], f'{path}.{key}')
