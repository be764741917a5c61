"""Operations on descriptors that the store and the search share: the multi-scale pyramid's rules
and the merging of query views."""
