"""PHI scrubbing: injected identifiers never survive, the medical content does."""

from medsegllm.reports.scrub import scrub_phi

PHI_REPORT = """Patient: John Smith MRN: 12345678 DOB: 03/04/1961
Name: SMITH, JOHN
Referring physician: Dr. Jane A. Doe. Exam date: March 3, 2024, follow-up 2024-01-15 and 15 Jan 2024.
Accession: ACC-99812. Performed at St. Mary's Hospital, 123 Main Street, Springfield, IL 62704.
Call (555) 123-4567 or jdoe@mercy.org. Mr. Brown was seen at Mayo Clinic.
Signed by Alan Turing, MD
FINDINGS: A 3.2 x 2.1 cm hepatocellular carcinoma in segment VII of the liver. A 1,5 cm renal lesion."""

IDENTIFIERS = ["John", "Smith", "SMITH", "12345678", "1961", "Jane", "Doe", "2024", "99812", "Mary",
               "Main Street", "62704", "555", "jdoe", "Brown", "Mayo", "Turing"]


def test_identifiers_are_replaced_by_tags():
    text, count = scrub_phi(PHI_REPORT)
    for identifier in IDENTIFIERS:
        assert identifier not in text, identifier
    for tag in ["[NAME]", "[DATE]", "[ID]", "[PHONE]", "[ADDRESS]", "[INSTITUTION]", "[EMAIL]"]:
        assert tag in text, tag
    assert count >= 15


def test_medical_content_survives():
    text, _ = scrub_phi(PHI_REPORT)
    assert "A 3.2 x 2.1 cm hepatocellular carcinoma in segment VII of the liver." in text
    assert "A 1,5 cm renal lesion." in text
    assert text.startswith("Patient: [NAME] MRN: [ID] DOB: [DATE]")


def test_clean_report_is_unchanged():
    report = "Patient is a 65-year-old man. The kidneys are unremarkable. Study name: CT ABDOMEN, 5 mm slices."
    assert scrub_phi(report) == (report, 0)
