"""Key paths of the saved-state key tree (``vmrs-format.md`` §9.1), declared once."""

SAVEDSTATE = "/savedstate"
PARTITION_STATE = "/savedstate/savedVM/partition_state"
VM_VERSION = "/savedstate/VmVersion"
SAVED_STATE_TYPE = "/savedstate/type"
CONFIG_VERSION = "/configuration/properties/version"


def ram_block(number: int) -> str:
    """The key of RamBlock ``number`` (1 MiB of saved RAM)."""
    return f"{SAVEDSTATE}/RamBlock{number}"
