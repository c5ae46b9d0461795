"""Validation of experiment configs against their defaults: unknown or missing keys, and values of the
wrong type, fail loudly with the dotted key in the message."""

import contextlib
import numbers

import ml_collections


def _keys(config: ml_collections.ConfigDict) -> set[str]:
  return set(config.keys())


def _type_name(kind: type) -> str:
  return {int: 'an integer', float: 'a number', bool: 'True or False', str: 'a string'}.get(
    kind, f'a {kind.__name__}'
  )


def _matches(value, kind: type) -> bool:
  """Whether `value` may stand where the schema holds a `kind` (ints where floats go, never bools)."""
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  if kind in (tuple, list):
    return isinstance(value, tuple | list)
  return isinstance(value, kind)


def _check_value(path: str, value, default, kind: type) -> None:
  if value is None:
    if default is None:
      return  # An optional key (a placeholder) left unset.
    raise ValueError(f'{path} must be {_type_name(kind)}, got None.')
  if not _matches(value, kind):
    raise ValueError(f'{path} must be {_type_name(kind)}, got {type(value).__name__} {value!r}.')
  if kind in (tuple, list) and default:
    element_kind = type(default[0])
    for i, element in enumerate(value):
      if not _matches(element, element_kind):
        raise ValueError(
          f'{path}[{i}] must be {_type_name(element_kind)}, got {type(element).__name__} {element!r}.'
        )


def validate(
  config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, path: str = 'config'
) -> None:
  """Raises ValueError if `config` has a key `reference` lacks (a typo), lacks one it has, or holds a
  value of another type than the reference's (an int where a float goes is fine; None only where the
  reference's value is an unset placeholder).

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
  for key in sorted(_keys(reference)):
    if isinstance(reference[key], ml_collections.ConfigDict):
      if not isinstance(config[key], ml_collections.ConfigDict):
        raise ValueError(f'{path}.{key} must be a section, got {config[key]!r}.')
      validate(config[key], reference[key], f'{path}.{key}')
    else:
      _check_value(f'{path}.{key}', config[key], reference[key], reference.get_type(key))


@contextlib.contextmanager
def section(name: str):
  """Prefixes a ValueError raised while building from config section `name` with its dotted path, so
  that a library's message ("num_particles must be positive") names the key to change."""
  try:
    yield
  except ValueError as error:
    raise ValueError(f'config.{name}: {error}') from error
