-- q3: sellers from Oregon, Idaho or California and their auctions in category 10.
SELECT P.name, P.city, P.state, A.id
FROM ${AUCTION} AS A INNER JOIN ${PERSON} AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca')
