"""Shared results: `store` keeps them, `document` is what one holds, `reply_json` reads a reply back
without trusting it; `render/share_page.py` shows one."""
