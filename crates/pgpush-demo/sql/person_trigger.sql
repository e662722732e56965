-- Runs person_published() (person_durable.sql or person_notify.sql) after every insert and update.
DROP TRIGGER IF EXISTS person_updated ON person;
CREATE TRIGGER person_updated AFTER INSERT OR UPDATE ON person
    FOR EACH ROW EXECUTE FUNCTION person_published();
