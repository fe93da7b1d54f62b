"""The PALM envelope class, under the module name pylm 0.14 code imports.

``PalmMessage`` is pylm_core's codec: the same six fields, byte-identical
encoding to protobuf's for the schema in shared/API.md, no protobuf needed.
"""

from pylm_core import PalmMessage

__all__ = ["PalmMessage"]
