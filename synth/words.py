"""Words printed on synthetic book and CD covers (French and English), and people's names.

Only the text on a cover separates one book or CD class from another in the synthetic catalogue,
as in the real one; each class draws its own small vocabulary from these lists.
"""

FRENCH = """
amour maison jardin histoire cuisine voyage enfance guerre paix soleil lune nuit matin hiver
printemps automne mer montagne village ville chemin route fleuve forêt rivière oiseau cheval chien
chat loup renard secret mystère silence mémoire lumière ombre étoile ciel terre feu eau vent pierre
château royaume reine roi prince princesse chevalier dragon trésor île désert océan tempête orage
neige glace sable miroir fenêtre porte clé lettre livre poème chanson musique danse théâtre peinture
couleur rouge bleu vert noir blanc jaune rose violet doré argent cœur âme esprit rêve destin
voyageur marin pêcheur boulanger médecin juge soldat pirate sorcière fantôme ange démon héros
famille frère sœur père mère fille fils ami ennemi voisin étranger
cuisine recettes gâteaux pâtisserie légumes fromage vin pain chocolat café thé
mathématiques physique chimie biologie géographie grammaire vocabulaire exercices méthode leçons
philosophie politique économie droit finance entreprise marketing gestion informatique réseau
santé bien-être yoga sport football vélo randonnée pêche chasse bricolage couture tricot
""".split()

ENGLISH = """
love house garden history kitchen journey childhood war peace sun moon night morning winter
spring autumn sea mountain village city road river forest bird horse dog cat wolf fox
secret mystery silence memory light shadow star sky earth fire water wind stone castle kingdom
queen king prince princess knight dragon treasure island desert ocean storm thunder snow ice sand
mirror window door key letter book poem song music dance theatre painting colour red blue green
black white yellow golden silver heart soul spirit dream fate traveller sailor fisherman baker
doctor judge soldier pirate witch ghost angel demon hero family brother sister father mother
daughter son friend enemy neighbour stranger recipes cakes baking vegetables cheese wine bread
chocolate coffee tea mathematics physics chemistry biology geography grammar exercises method
lessons philosophy politics economics law finance business marketing management computing network
health wellness yoga football cycling hiking fishing hunting carpentry sewing knitting
""".split()

FILLER = """
le la les un une des du de et à en pour avec sans sur dans the of and a to in for with on
tome volume édition edition nouvelle new collection intégrale complete guide manuel
""".split()

FIRST_NAMES = """
Marie Jean Pierre Sophie Claire Louis Camille Hugo Emma Lucas Chloé Nicolas Julie Antoine
Alice Thomas Léa Paul Manon Victor Anna James Mary John Patricia Robert Linda Michael Sarah
David Emily George Olivia Henry Grace Oscar Ruby Arthur Ella
""".split()

LAST_NAMES = """
Martin Bernard Dubois Thomas Robert Richard Petit Durand Leroy Moreau Simon Laurent Lefebvre
Michel Garcia David Bertrand Roux Vincent Fournier Morel Girard André Mercier Dupont Lambert
Bonnet François Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Moore
Jackson White Harris Clark Lewis Walker Hall Young King Wright
""".split()

# Product titles (``SynthConfig.titles``): a brand and a colour mixed with the class's own words, as in
# a catalogue team's listing ("Puma Men Grey Solid Round Neck T-Shirt"). Brands are invented.
BRANDS = """
Arvento Belmar Calypso Dorvik Elsinor Fabrique Galant Helios Isola Jadis Kestrel Lumen Maravel
Nordika Orphee Pampa Quartzo Rivola Solenne Tamaris Ulyss Valdor Wendel Xantia Yorval Zephir
""".split()

COLOURS = """
black white grey red blue green yellow pink purple brown beige navy orange silver gold
noir blanc gris rouge bleu vert jaune rose violet marron
""".split()
