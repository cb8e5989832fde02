"""The MQTT broker OneOS brings along (amqtt as a Twisted service)."""
