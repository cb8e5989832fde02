"""twistd plugin ``oneospsd``: the OneOS publish/subscribe broker.

Only names the service maker; its options and ``makeService`` live in
``oneos.broker.tap``, imported when the subcommand is used.  This directory
has no ``__init__.py`` on purpose: Twisted finds plugin files in every
``twisted/plugins`` directory on ``sys.path``.
"""

from twisted.application.service import ServiceMaker

oneospsd = ServiceMaker(
    "OneOS pubsub broker",
    "oneos.broker.tap",
    "OneOS pubsub broker: an MQTT 3.1.1 broker (amqtt) for OneOS runtimes to meet on",
    "oneospsd",
)
