"""Shared results: `store` keeps them (SQLite or PostgreSQL), `document` is what one holds
(`SharedItem`, `Reproduction`), `reply_json` reads a reply back from JSON without trusting it.
The page that shows one is `render/share_page.py`."""
