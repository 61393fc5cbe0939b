"""Monitoring tools report bad hosts here: the receiving endpoint POST /hooks/<name> (views.py),
the Webhook events page (events.py) and one payload parser per tool (sources/). What Ferry
does about an alert is decided by the receiver, app/services/webhooks.py."""
