-- Equal prices may take either rank: compare the prices at each rank.
SELECT auction, price, rank_number FROM ${RESULT}
