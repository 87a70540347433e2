-- Two bids at the same instant are equally last: compare what every pick shares.
SELECT auction, bidder, date_time FROM ${RESULT}
