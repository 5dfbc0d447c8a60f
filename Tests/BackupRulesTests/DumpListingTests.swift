import BackupRules
import Testing

@Suite struct DumpListingTests {
    /// A listing as pg_restore 15 prints it for a database with a schema
    /// and a table whose names hold spaces, comments, partitions and large objects.
    static let listing = """
        ;
        ; Archive created at 2026-11-26 02:40:00 UTC
        ;
        6; 2615 75768 SCHEMA - my schema postgres
        846; 1247 75770 TYPE public mood postgres
        849; 1247 75776 DOMAIN public posint postgres
        223; 1255 75818 FUNCTION public f() postgres
        216; 1259 75779 TABLE my schema odd table postgres
        3399; 0 0 COMMENT my schema TABLE "odd table" postgres
        3400; 0 0 COMMENT my schema COLUMN "odd table".m postgres
        215; 1259 75778 SEQUENCE my schema odd table_id_seq postgres
        3401; 0 0 SEQUENCE OWNED BY my schema odd table_id_seq postgres
        217; 1259 75786 TABLE public t postgres
        219; 1259 75803 MATERIALIZED VIEW public mv postgres
        220; 1259 75807 TABLE public parted postgres
        221; 1259 75810 TABLE public parted_1 postgres
        218; 1259 75799 VIEW public v postgres
        3227; 0 0 TABLE ATTACH public parted_1 postgres
        3228; 2604 75782 DEFAULT my schema odd table id postgres
        3390; 2613 75820 BLOB - 75820 postgres
        3385; 0 75779 TABLE DATA my schema odd table postgres
        3386; 0 75786 TABLE DATA DATA t postgres
        3402; 0 0 SEQUENCE SET my schema odd table_id_seq postgres
        3392; 0 0 BLOBS - BLOBS 
        3231; 2606 75785 CONSTRAINT my schema odd table odd table_pkey postgres
        3232; 1259 75798 INDEX public t_body postgres
        3237; 0 0 INDEX ATTACH public parted_1_k_idx postgres
        3239; 2620 75819 TRIGGER public t tr postgres
        3238; 2606 75793 FK CONSTRAINT public t t_other_fkey postgres
        3387; 0 75803 MATERIALIZED VIEW DATA public mv postgres
        """

    @Test func objectsAreReadByTheirFieldsNotBySubstring() {
        let parsed = DumpListing(Self.listing)
        #expect(parsed.objects.map(\.description) == [
            "SCHEMA - my schema", "TYPE public mood", "DOMAIN public posint", "TABLE my schema odd table",
            "SEQUENCE my schema odd table_id_seq", "TABLE public t", "MATERIALIZED VIEW public mv", "TABLE public parted",
            "TABLE public parted_1", "VIEW public v", "LARGE OBJECT - 75820", "CONSTRAINT my schema odd table odd table_pkey",
            "INDEX public t_body", "TRIGGER public t tr", "FK CONSTRAINT public t t_other_fkey",
        ])
        #expect(parsed.objects.filter { $0.kind == .table }.count == 4)
        #expect(parsed.sequenceSetLines == ["3402; 0 0 SEQUENCE SET my schema odd table_id_seq postgres"])
    }

    @Test func whatADatabaseLacksIsNamed() {
        let parsed = DumpListing(Self.listing)
        var present = Set(parsed.objects.map { DumpListing.CatalogName(catalog: $0.kind.catalog, name: $0.name) })
        #expect(parsed.missing(from: present).isEmpty)
        present.remove(DumpListing.CatalogName(catalog: 1259, name: "public v"))
        present.remove(DumpListing.CatalogName(catalog: 2613, name: "- 75820"))
        #expect(parsed.missing(from: present).map(\.description) == ["VIEW public v", "LARGE OBJECT - 75820"])
    }

    @Test func sequenceValuesAreReadFromTheRestoreScript() {
        let script = """
            SET statement_timeout = 0;
            SELECT pg_catalog.setval('"my schema"."odd table_id_seq"', 1, true);
            SELECT pg_catalog.setval('public.s', 6, false);
            SELECT pg_catalog.setval('public."it''s"', -3, true);
            """
        let values = DumpListing.sequenceValues(in: script)
        #expect(values.map(\.sequence) == [#""my schema"."odd table_id_seq""#, "public.s", #"public."it's""#])
        #expect(values.map(\.value) == [1, 6, -3])
        #expect(values.map(\.called) == [true, false, true])
    }
}
