-- Trading calendars: each market names the calendar its expected bars follow (rl_lifecycle/calendars.py):
-- 'crypto' (24/7), 'fx' (24/5, Sunday 17:00 to Friday 17:00 New York time) or an exchange code of
-- exchange_calendars ('XNYS', 'XLON', ...). Names are validated by the application, which knows the library's list.
-- depends: 0004.candle-change-stamps

ALTER TABLE markets ADD COLUMN IF NOT EXISTS calendar text NOT NULL DEFAULT 'crypto';
