"""The edge half of fedge: compression and export of the trained model, delivery over MQTT, the device agent."""
