-- q6 (group top-1 variant): per seller, the average winning price of their auctions.
SELECT Q.seller, avg(Q.final) AS avg
FROM (
  SELECT ROW_NUMBER() OVER (PARTITION BY A.id, A.seller ORDER BY B.price DESC) AS rank,
         A.seller, B.price AS final
  FROM ${AUCTION} AS A, ${BID} AS B
  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
) AS Q
WHERE Q.rank <= 1
GROUP BY Q.seller
