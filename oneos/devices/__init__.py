"""I/O devices as resources of the grid: cameras, GPIO pins, programs, test sources and sinks.

A runtime serves the devices its configuration names (``devices`` in
``config.json``, ``--device NAME:in|out:DRIVER[:KEY=VALUE,...]``) on its own
RPC target; readers and writers get a stream of the runtime's transfer
server, so a device is used like a pipe from any runtime.  docs/devices.md
describes drivers, options, the RPC and the stream design.

Modules, each importing only those listed before it:

* ``errors``: :class:`DeviceError` and the wire kind ``ENODEV``;
* ``info``: what crosses the wire (:class:`DeviceInfo`, ``RUNTIME/NAME``);
* ``mjpeg``: a pure MJPEG frame splitter;
* ``options``: reading a device's ``KEY=VALUE`` options;
* ``base``: the driver interface (:class:`InputDriver`, :class:`OutputDriver`);
* ``fanout``: one driver's units to many readers (drop or block per reader);
* ``drivers``: one module per driver and the one table of them;
* ``service``: the runtime's ``devices`` service (RPC handlers, status);
* ``client``: :class:`DevicesClient`, the typed client of the handlers;
* ``gateway``: the runtime's device gateway, through which the programs it
  runs open devices by name (``program/oneos_device.py``, the stdlib-only
  module they import, is put on their ``PYTHONPATH``).
"""
