"""OneOS: a network of machines that looks like one computer.

Every machine runs a runtime (``twistd -n oneosd``); runtimes meet on an MQTT
publish/subscribe network (``twistd -n oneospsd`` or any MQTT 3.1.1 broker),
elect which of them hosts the kernel services, and share one file tree.
"""

__version__ = "0.1.0"

#: Version of the JSON messages OneOS puts on the wire.  A message whose
#: ``v`` field differs is logged and dropped, never acted on.
WIRE_VERSION = 1

#: Every OneOS topic lives below this prefix so OneOS can share a broker
#: with other applications.
TOPIC_ROOT = "oneos/v1"
