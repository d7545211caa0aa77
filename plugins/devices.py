"""The built-in device strategies, as the `select_strategy` firstresult hook."""

from registry import hookimpl


@hookimpl(trylast=True)
def select_strategy(device):
    from backends.devices import DEVICES, select_strategy as strategy_for

    if device not in DEVICES:
        return None  # another plugin may know this device
    return strategy_for(device)
