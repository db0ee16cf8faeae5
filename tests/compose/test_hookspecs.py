"""compose.hookspecs is the plugin author's contract: every hook is documented, and the host calls exactly these."""

import inspect

from compose import hookspecs
from compose.plugin_host import PluginHost

HOOKS = {
    "compose_register_stages",
    "compose_register_training_extensions",
    "compose_training_setup",
    "compose_training_step_end",
}


def test_every_hook_is_declared_and_documented():
    declared = {name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("compose_")}
    assert declared == HOOKS
    for name in declared:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc.split()) >= 15, f"{name}: the docstring is the contract and says too little"


def test_the_host_offers_exactly_the_declared_hooks():
    host = PluginHost()
    assert {name for name in vars(host.hook) if name.startswith("compose_")} == HOOKS
