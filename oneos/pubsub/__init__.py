"""Publish/subscribe: how runtimes meet.

``mqtt`` is the pure MQTT 3.1.1 codec, ``address`` the broker URL
(``mqtt://``/``mqtts://``) taken apart, ``client`` the reconnecting client
service, ``messages`` the JSON envelope every OneOS message uses, ``topics``
the topic names, ``rpc`` request/response over topics.
"""
