"""twistd plugin ``oneosd``: a OneOS runtime.

Only names the service maker; its options and ``makeService`` live in
``oneos.runtime.tap``, imported when the subcommand is used.  This directory
has no ``__init__.py`` on purpose: Twisted finds plugin files in every
``twisted/plugins`` directory on ``sys.path``.
"""

from twisted.application.service import ServiceMaker

oneosd = ServiceMaker(
    "OneOS runtime",
    "oneos.runtime.tap",
    "OneOS runtime: joins the pubsub network, takes part in the kernel election, runs agents",
    "oneosd",
)
