-- q10: every bid with its date and hour:minute as strings.
SELECT auction, bidder, price, date_time, to_char(date_time, 'YYYY-MM-DD') AS date, to_char(date_time, 'HH:MI') AS time
FROM ${BID}
