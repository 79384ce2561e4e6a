"""Everything about how BestSMS spells things, one concern per module.

- `decode`: the four callback encodings (JSON, XML, form, query) -> a flat field dict, and the
  credentials that are never stored (redaction).
- `fields`: marshmallow fields for BestSMS's values (text, prices, times) and the schema base.
- `events`: the one recipient-result event and the one reply event, built alike from webhooks
  and polls (status spellings, Type=Email, E.164, field limits written once), and the webhook schemas.
- `api`: the poll API: its client, its errors and its response schemas.

The rest of the service sees events: dictionaries keyed by our column names.
"""
