"""The server side of edge delivery: sign and publish models, roll them out in stages, collect the fleet's reports.

Imports :mod:`edge.agent.protocol` (the wire format) and the agent's verification helpers, paho-mqtt and
cryptography; the agent never imports this package.
"""
