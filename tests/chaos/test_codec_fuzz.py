"""Campaign 6: every codec fuzzed for a long run (opt-in: ``--soak``).

The properties are those of the codecs' own test modules (``tests/drivers/test_card_codec.py``,
``tests/drivers/test_weight_codec.py``, ``tests/authorities/test_gather_codec.py``): random
bytes never raise nor invent a card, weight or frame; valid frames cut anywhere, between
noise, spliced or with a flipped bit are read as the properties say; encode/decode round
trips; the decoders equal their greedy references. Each hypothesis test there is picked
up here (so a property added there is fuzzed here too) and run again with
``max_examples=20000`` instead of the few hundred of the default run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

TESTS = Path(__file__).resolve().parents[1]
MODULES = {
    "card": TESTS / "drivers" / "test_card_codec.py",
    "weight": TESTS / "drivers" / "test_weight_codec.py",
    "gather": TESTS / "authorities" / "test_gather_codec.py",
}
EXAMPLES = 20000
LONG = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def _load(name: str, path: Path):
    # Under a name of our own: pytest imports the same file as a test module of its own.
    spec = importlib.util.spec_from_file_location(f"_chaos_fuzz_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _long_run(fn):
    """The same property with the same strategies and parameters, 20000 examples."""
    handle = fn.hypothesis
    strategies = getattr(handle, "_given_kwargs", None)
    if strategies is None:
        raise RuntimeError(f"{fn.__name__}: this hypothesis version hides a test's strategies; "
                           "list them here by hand")
    test = LONG(given(**strategies)(handle.inner_test))
    for mark in getattr(fn, "pytestmark", []):
        test = getattr(pytest.mark, mark.name)(*mark.args, **mark.kwargs)(test)
    return pytest.mark.timeout(3600)(pytest.mark.soak(test))


FOUND: dict[str, int] = {}
for _codec, _path in MODULES.items():
    _module = _load(_codec, _path)
    FOUND[_codec] = 0
    for _name, _fn in sorted(vars(_module).items()):
        if _name.startswith("test_") and getattr(_fn, "is_hypothesis_test", False):
            globals()[f"test_{_codec}_{_name[len('test_'):]}"] = _long_run(_fn)
            FOUND[_codec] += 1


def test_every_codec_has_properties_to_fuzz() -> None:
    """Cheap guard in the default run: the long runs above found their properties."""
    assert all(n >= 3 for n in FOUND.values()), FOUND
