"""The libp2p network that nodes and requesters both join: host building and dialing
(``host``), GossipSub capacity records, the Kademlia DHT and record exchange (``overlay``), and
the directory of live records (``directory``). libp2p errors become ours here."""
